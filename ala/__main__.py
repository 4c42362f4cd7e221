from ala.cli import app

app(prog_name="ala")
