"""The router: validates and bounds advice into per-action logit biases and routes them to actors."""
