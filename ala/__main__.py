from ala.cli import run

run()
