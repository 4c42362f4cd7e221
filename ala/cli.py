"""`ala`: one command for the broker, each service, the whole stack, settings and the wire contract.

Over 300 lines because every command is a thin typed entry point here (typer), each calling one module.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel, SecretStr, ValidationError
from pydantic_settings import BaseSettings
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ala import __version__, settings_file
from ala.broker import BrokerCluster
from ala.config import BrokerSettings, NatsSettings
from ala.service import configure_logging
from ala.supervisor import RestartPolicy, Supervisor
from ala.tls import generate
from services import SERVICE_NAMES

app = typer.Typer(help="ALA, the Asynchronous LLM Advisor.", no_args_is_help=True, add_completion=False)
config_app = typer.Typer(help="Inspect settings.", no_args_is_help=True)
protos_app = typer.Typer(help="The wire contract.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(protos_app, name="protos")
tls_app = typer.Typer(help="TLS between services and broker, for a lab.", no_args_is_help=True)
app.add_typer(tls_app, name="tls")
dataset_app = typer.Typer(help="Offline datasets from the trajectories a run stored.", no_args_is_help=True)
app.add_typer(dataset_app, name="dataset")
preference_app = typer.Typer(help="A preference reward model fit before a run (Motif).", no_args_is_help=True)
app.add_typer(preference_app, name="preference")
console = Console()


def _service_module(name: str) -> Any:
    return importlib.import_module(f"services.{name}.service")


def _settings_class(name: str) -> type[BaseSettings]:
    module = importlib.import_module(f"services.{name}.settings")
    return getattr(module, f"{name.capitalize()}Settings")


def _add_service_command(name: str) -> None:
    def command() -> None:
        _service_module(name).main()

    command.__doc__ = f"Run the {name} service (settings: ALA_{name.upper()}_*, ALA_NATS_*, ALA_RUN)."
    app.command(name)(command)


for _name in SERVICE_NAMES:
    _add_service_command(_name)


def config_sections() -> dict[str, settings_file.Section]:
    """Every table a configuration file may have (and a benchmark arm's overlay: benchmarks/arms.toml)."""
    classes = {"nats": NatsSettings, "broker": BrokerSettings, "up": RestartPolicy}
    classes |= {name: _settings_class(name) for name in SERVICE_NAMES}
    return settings_file.sections(classes, SERVICE_NAMES)


_from_file: dict[str, str] = {}
"""The variables the configuration file set in this process (for `ala config show`'s source column)."""


@app.callback()
def main(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            envvar=settings_file.CONFIG_VARIABLE,
            help="A TOML file of settings by section (ala/settings_file.py); environment variables override it.",
        ),
    ] = None,
) -> None:
    """Load the configuration file into the environment, then refuse any ALA_* variable that no setting reads."""
    sections = config_sections()
    try:
        if config is not None:
            variables = settings_file.read(config, sections, SERVICE_NAMES)
            settings_file.apply(variables, os.environ)
            os.environ[settings_file.CONFIG_VARIABLE] = str(config)  # `ala up`'s services read the same file
            _from_file.update({name: value for name, value in variables.items() if os.environ[name] == value})
        settings_file.check_environment(os.environ, settings_file.known_variables(sections))
    except settings_file.ConfigError as error:
        console.print(str(error), style="red", markup=False, highlight=False, soft_wrap=True)
        raise typer.Exit(2) from error


ClusterOption = Annotated[
    int | None,
    typer.Option("--cluster", help="Run this many nodes as one NATS cluster (ALA_BROKER_CLUSTER_SIZE; 3 for R3)."),
]


def _broker_settings(cluster: int | None) -> BrokerSettings:
    return BrokerSettings() if cluster is None else BrokerSettings(cluster_size=cluster)


@app.command()
def nats(cluster: ClusterOption = None) -> None:
    """Run the embedded nats-server (JetStream on disk) until Ctrl-C. Settings: ALA_BROKER_*."""
    configure_logging("INFO")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with BrokerCluster(_broker_settings(cluster)) as broker:
        for node in broker.nodes:
            console.print(f"nats-server at [bold]{node.url}[/], monitoring {node.monitor_url}, log {node.log_path}")
        if len(broker.nodes) > 1:
            console.print(f"services: ALA_NATS_URL={broker.url} ALA_NATS_REPLICAS={broker.settings.replicas}")
        if broker.credentials is not None:
            console.print(
                f"one user per service; passwords in {broker.credentials.directory}/<service>.password: run each"
                " service with ALA_NATS_USER=<service> ALA_NATS_PASSWORD_FILE=<that file>"
            )
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()


@tls_app.command("generate")
def tls_generate(
    directory: Annotated[Path, typer.Option("--dir", help="Where to write ca.pem, server.pem, server-key.pem.")] = Path(
        ".ala/tls"
    ),
    hosts: Annotated[
        list[str] | None, typer.Option("--host", help="Another name or address of the broker (repeat).")
    ] = None,
) -> None:
    """A self-signed CA and a broker certificate for the lab: serve with ALA_BROKER_TLS_DIR=<dir>, connect with
    ALA_NATS_TLS_CA_FILE=<dir>/ca.pem (`ala up` sets it)."""
    files = generate(directory, tuple(hosts or ()))
    console.print(f"CA {files.ca}; broker certificate {files.cert} (key {files.key}, mode 0600)")


@app.command()
def up(
    services: Annotated[
        list[str] | None, typer.Option("--service", "-s", help="Run only these services (repeat the option).")
    ] = None,
    broker: Annotated[bool, typer.Option(help="Start the embedded broker; --no-broker uses ALA_NATS_URL.")] = True,
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
    max_restarts: Annotated[
        int | None,
        typer.Option(help="Restarts of a service that dies, within ALA_UP_RESTART_WINDOW_S, before all stop."),
    ] = None,
    cluster: ClusterOption = None,
    learner_ranks: Annotated[
        int,
        typer.Option(
            envvar="ALA_UP_LEARNER_RANKS",
            min=1,
            help="Learner processes on torch.distributed (ALA_LEARNER_DISTRIBUTED: sync or merge); rank 0 publishes.",
        ),
    ] = 1,
) -> None:
    """Start the broker and every service as separate processes; one Ctrl-C stops them all. A service that dies
    is restarted with backoff, up to --max-restarts times (ALA_UP_MAX_RESTARTS, default 3), then all stop."""
    configure_logging("INFO")
    chosen = services or list(SERVICE_NAMES)
    unknown = sorted(set(chosen) - set(SERVICE_NAMES))
    if unknown:
        raise typer.BadParameter(f"unknown service(s) {unknown}; choose from {list(SERVICE_NAMES)}")
    policy = RestartPolicy() if max_restarts is None else RestartPolicy(max_restarts=max_restarts)
    supervisor = Supervisor(chosen, _broker_settings(cluster) if broker else None, duration, policy, learner_ranks)
    raise typer.Exit(supervisor.run())


@config_app.command("show")
def config_show(
    service: Annotated[str | None, typer.Argument(help="One service; all when omitted.")] = None,
) -> None:
    """Print the effective settings, the environment variable that sets each, and where its value came from (the
    configuration file, the environment, or the default)."""
    names = [service] if service else list(SERVICE_NAMES)
    if any(name not in SERVICE_NAMES for name in names):
        raise typer.BadParameter(f"choose from {list(SERVICE_NAMES)}")
    sections = config_sections()
    console.print(_settings_table("broker (ala nats, ala up)", BrokerSettings(), sections["broker"]))
    console.print(_settings_table("nats connection (every service)", NatsSettings(), sections["nats"]))
    console.print(_settings_table("ala up (restarts)", RestartPolicy(), sections["up"]))
    for name in names:
        console.print(_settings_table(name, _settings_class(name)(), sections[name]))


def _settings_table(title: str, settings: BaseSettings, section: settings_file.Section) -> Table:
    """One section's settings, grouped as a file nests them: a header row per table (`[learner.ppo]`), then its
    keys' variables, values, sources and descriptions."""
    table = Table(title=title, title_justify="left")
    table.add_column("environment variable", no_wrap=True)
    table.add_column("value", overflow="fold")
    table.add_column("from")
    table.add_column("description")
    prefix = settings.model_config.get("env_prefix", "")
    top_level = {variable: key for key, variable in settings_file.TOP_LEVEL.items()}

    def table_of(field_name: str, variable: str) -> str:
        """The file's table that sets this field: `[learner.ppo]`, `[learner]`, or the top of the file."""
        if field_name not in section.keys:
            return "top of the file" if variable in top_level else "environment only"
        group = section.file_key(field_name).rpartition(".")[0]
        return f"[{section.name}.{group}]" if group else f"[{section.name}]"

    rows = []
    for field_name, info in type(settings).model_fields.items():
        value = getattr(settings, field_name)
        if isinstance(value, BaseSettings):
            continue  # nested settings get their own table
        env_name = info.validation_alias if isinstance(info.validation_alias, str) else f"{prefix}{field_name}"
        shown = "********" if isinstance(value, SecretStr) and value.get_secret_value() else str(value)
        if isinstance(value, BaseModel):  # a table of its own, as its variable takes it (secrets masked by pydantic)
            shown = value.model_dump_json()
        variable = env_name.upper()
        source = "file" if variable in _from_file else "environment" if variable in os.environ else "default"
        experimental = isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("experimental")
        description = ("(experimental) " if experimental else "") + (info.description or "")
        rows.append((table_of(field_name, variable), variable, shown, source, description))
    order = {f"[{section.name}]": 0, "top of the file": 2, f"[{section.name}.{settings_file.EXPERIMENTAL_TABLE}]": 3}
    rows.sort(key=lambda row: (order.get(row[0], 1), row[0]))
    for i, (heading, *cells) in enumerate(rows):
        if i == 0 or rows[i - 1][0] != heading:
            table.add_row(escape(heading), "", "", "", style="bold", end_section=False)
        table.add_row(*cells, end_section=i + 1 < len(rows) and rows[i + 1][0] != heading)
    return table


@protos_app.command("export")
def protos_export(
    out: Annotated[Path | None, typer.Option(help="Directory for the *.schema.json files.")] = None,
) -> None:
    """Write a JSON Schema for every message type (for clients in other languages)."""
    from protos.schema import SCHEMA_DIR, write_json_schemas

    for path in write_json_schemas(out or SCHEMA_DIR):
        console.print(str(path))


@app.command()
def train(
    local: Annotated[bool, typer.Option("--local", help="Actor and learner in this process, no broker.")] = False,
    env_id: Annotated[str | None, typer.Option(help="Environment (default: ALA_ACTOR_ENV_ID).")] = None,
    total_steps: Annotated[int, typer.Option(help="Environment steps to train for.")] = 1_000_000,
    seed: Annotated[int | None, typer.Option(help="Seed of actor and learner.")] = None,
    stop_at_return: Annotated[
        float | None, typer.Option(help="Stop once the mean return of the last 100 episodes reaches this.")
    ] = None,
    eval_every: Annotated[
        int, typer.Option(help="Score the policy alone on held-out seeds every this many updates (0: never).")
    ] = 0,
    stop_at_eval: Annotated[
        float | None, typer.Option(help="Stop once two consecutive evaluations' returns reach this.")
    ] = None,
    save: Annotated[
        Path | None, typer.Option(help="Save the trained policy here (ala.rl.saved; `ala export` takes it).")
    ] = None,
) -> None:
    """Train PPO. `--local` is the single-process baseline; the distributed stack is `ala up`."""
    if not local:
        raise typer.BadParameter("distributed training runs with `ala up`; add --local for the single-process trainer")
    from ala.rl.local import Progress, train_local
    from services.actor.settings import ActorSettings
    from services.learner.settings import LearnerSettings

    overrides: dict[str, Any] = {"env_id": env_id} if env_id else {}
    if seed is not None:
        overrides["seed"] = seed
    actor = ActorSettings(**overrides)
    learner = LearnerSettings(**overrides)

    above = 0  # consecutive evaluations at or above stop_at_eval: one evaluation can be lucky

    def report(progress: Progress) -> bool:
        nonlocal above
        if progress.evaluation is not None:
            console.print(
                f"eval v{progress.updates} at {progress.env_steps:,} env steps after {progress.train_seconds:.2f}s: "
                f"return {progress.evaluation.sampled.mean_return:.3f}"
            )
            reached = stop_at_eval is not None and progress.evaluation.sampled.mean_return >= stop_at_eval
            above = above + 1 if reached else 0
            if above == 2:
                return True
        if progress.updates % 10 == 0:
            console.print(
                f"steps {progress.env_steps:>9,}  sps {progress.steps_per_s:6.0f}  "
                f"return {progress.mean_return:5.3f}  entropy {progress.stats['losses/entropy']:.3f}"
            )
        return stop_at_return is not None and progress.mean_return >= stop_at_return

    run = train_local(actor, learner, total_steps, report, evaluate_every=eval_every)
    console.print(f"{run.env_steps:,} steps in {run.seconds:.1f}s ({run.env_steps / run.seconds:.0f} steps/s)")
    if save is not None and run.agent is not None:
        from ala.rl.saved import SavedPolicy, save_policy

        save_policy(save, SavedPolicy(run.agent, run.version, run.env_steps))
        console.print(f"saved {save}")


@app.command("export")
def export_command(
    which: Annotated[
        str,
        typer.Argument(
            help="best: the evaluator's best evaluated version (best.pt); latest: the learner's checkpoint (latest.pt);"
            " or the path of either file."
        ),
    ] = "best",
    out: Annotated[Path | None, typer.Option(help="Directory for policy.pt and policy.onnx.")] = None,
) -> None:
    """Export a trained policy for use outside ALA: policy.pt (weights, spec, version, evaluation; `ala.rl.saved`)
    and policy.onnx (checked with ONNX Runtime against torch). Files are found through the learner's and the
    evaluator's settings (ALA_RUN, ALA_LEARNER_CHECKPOINT_DIR, ALA_EVALUATOR_BEST_DIR, or the configuration file)."""
    from ala.rl.saved import export_policy, load_policy
    from services.evaluator.settings import EvaluatorSettings
    from services.learner.settings import LearnerSettings

    learner, evaluator = LearnerSettings(), EvaluatorSettings()
    sources = {"latest": learner.checkpoint_dir / learner.run / "latest.pt"}
    if evaluator.best_dir is not None:
        sources["best"] = evaluator.best_dir / evaluator.run / "best.pt"
    source = sources.get(which, Path(which))
    if not source.exists():
        detail = "the evaluator writes best.pt; `ala export latest` takes the learner's checkpoint"
        raise typer.BadParameter(f"no {source} ({detail})" if which in sources else f"no file {source}")
    try:
        policy = load_policy(source)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    name = which if which in sources else source.stem
    torch_path, onnx_path = export_policy(policy, out or Path(".ala/export") / f"{learner.run}-{name}")
    scores = ", ".join(f"{key} {value:.3f}" for key, value in policy.evaluation.items()) or "not evaluated"
    console.print(f"{policy.spec.env_id} v{policy.version} at {policy.env_steps:,} env steps ({scores}) from {source}")
    console.print(f"{torch_path}\n{onnx_path} (checked with ONNX Runtime against torch)")


@dataset_app.command("export")
def dataset_export(
    out: Annotated[Path, typer.Argument(help="Writes <out>.npz (transitions) and <out>.json (provenance).")],
    run: Annotated[str, typer.Option(envvar="ALA_RUN", help="The run whose chunks to read.")] = "dev",
    env_id: Annotated[str, typer.Option(envvar="ALA_ENV_ID", help="The env the run trained on.")] = (
        "MiniGrid-DoorKey-5x5-v0"
    ),
    max_steps: Annotated[int, typer.Option(min=0, help="Stop after this many env steps (0: all stored).")] = 0,
) -> None:
    """Read a run's trajectory chunks back from JetStream (ALA_NATS_URL; `ala nats` serves a stopped run's store)
    into transitions for offline RL (`ala.rl.offline`), with their provenance."""
    import asyncio

    from ala.dataset import export_to

    configure_logging("INFO")
    arrays, about, provenance = asyncio.run(export_to(NatsSettings(), run, env_id, out, max_steps))
    console.print(
        f"{provenance.transitions:,} transitions ({provenance.advised_transitions:,} advised) from {provenance.chunks}"
        f" chunks, {provenance.env_steps:,} env steps, policy versions {provenance.policy_versions[0]}-"
        f"{provenance.policy_versions[1]} of run {run}: {arrays} ({about})"
    )


@preference_app.command("fit")
def preference_fit(
    out: Annotated[Path, typer.Argument(help="Writes the model (<out>) and how it was fit (<out>.json).")],
    dataset: Annotated[Path, typer.Option(help="An exported dataset with full states (`ala dataset export`).")],
    env_id: Annotated[str, typer.Option(envvar="ALA_ENV_ID", help="The env the dataset comes from.")] = (
        "MiniGrid-DoorKey-5x5-v0"
    ),
    states: Annotated[int, typer.Option(min=10, help="Dataset states the planner ranks.")] = 8000,
    pairs: Annotated[int, typer.Option(min=1, help="Ranked pairs the model is fit on.")] = 4000,
    steps: Annotated[int, typer.Option(min=1, help="Bradley-Terry minibatch steps.")] = 4000,
    seed: Annotated[int, typer.Option(help="Seed of the sample, the pairs and the model.")] = 0,
) -> None:
    """Fit the preference reward model on a stored dataset's states ranked by the planner, before RL starts, as
    Motif does; the learner loads it with ALA_LEARNER_PREFERENCE_MODEL."""
    from ala.preference_fit import fit

    try:
        facts = fit(dataset.with_suffix(".npz"), env_id, out, states, pairs, steps, seed)
    except (OSError, ValueError) as exc:
        raise typer.BadParameter(str(exc)) from exc
    console.print(
        f"fit on {facts.pairs:,} planner-ranked pairs of {facts.states_ranked:,} states: orders"
        f" {facts.held_out_agreement:.3f} of {facts.held_out_pairs:,} held-out pairs as the planner does: {out}"
    )


@app.command()
def warm(
    env_id: Annotated[str, typer.Option(help="The env whose situations to ask about.")] = "MiniGrid-DoorKey-5x5-v0",
    episodes: Annotated[int, typer.Option(help="Seeded random episodes that find the situations.")] = 50,
    seed: Annotated[int, typer.Option(help="Seed of those episodes.")] = 0,
) -> None:
    """Pre-warm the advisors' situation caches (ALA_ADVISOR_*): ask each LLM advisor for an option in every
    situation of the env, so that a run starts with its answers on disk."""
    import asyncio

    from services.advisor.settings import AdvisorSettings
    from services.advisor.warm import warm as warm_caches

    settings = AdvisorSettings()
    answered = asyncio.run(warm_caches(settings, env_id, episodes, seed))
    for name, count in answered.items():
        console.print(f"{name}: {count} situations answered, cache in {settings.situation_cache_dir}")
    if not answered:
        console.print("no advisor gives options for this env (ALA_ADVISOR_ADVISORS; `advice`)")


@app.command()
def version() -> None:
    """Print ALA's version."""
    console.print(__version__)


def run() -> None:
    """The `ala` command: the app, with invalid settings said in one sentence per value instead of a traceback."""
    try:
        app(prog_name="ala")
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '(all)'}: {error['msg']} (got {error['input']!r})"
            for error in exc.errors()
        )
        console.print(
            f"invalid settings ({exc.title}): {problems}. Each is an ALA_* variable or a key of the --config file"
            " (`ala config show` lists them).",
            style="red",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        sys.exit(2)
