from stream.cli import entry

entry()
