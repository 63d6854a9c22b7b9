from abkit.cli import main

main(prog_name="abkit")
