from eaio.cli import app

app()
