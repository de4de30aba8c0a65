from stainbench.cli.main import run

run()
