from lrl.cli import app

app(prog_name="lrl")
