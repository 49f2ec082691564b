from vlmtrain.cli import app

app()
