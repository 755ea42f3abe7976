"""`python -m sentinel.monitoring`: regenerate the rules, dashboards and their docs in the current directory."""

from sentinel.cli.generate import generate

generate()
