"""The pydantic models of the config file.

common.py holds StrictModel and the sub-models kinds share; base.py the ProbeConfig every kind
extends; endpoint.py the WebSocketEndpoint block; each probe kind has its own module (echo.py);
probes.py keeps the live map of registered kinds; root.py holds the top of the file (global: and
probes:) and builds the model that validates `probes:` as the union of the registered kinds.

To add a probe kind: write its model in a new module (a ProbeConfig subclass with
`kind: Literal[...]`), its probe in probed/probes/, and one line in probed/kinds.py.
"""
