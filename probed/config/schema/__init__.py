"""The pydantic models of the config file.

common.py holds StrictModel and the pieces probe kinds share; each probe kind has its own module
(echo.py); probes.py joins the kinds into the ProbeConfig union; root.py holds the top of
the file (global: and probes:).

To add a probe kind: write its model in a new module (a StrictModel with a `kind: Literal[...]`
field and a `name`), add it to the union in probes.py and re-export it from probed.config.
"""
