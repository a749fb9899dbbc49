"""`edge-tl ship`: every stage from a folder of images to a verified model on the device, like make.

The library side of the command: :mod:`edge_tl.ship.options` (the stage commands' options,
gathered), :mod:`edge_tl.ship.config` (config files), :mod:`edge_tl.ship.preflight` (checks
before long work), :mod:`edge_tl.ship.stages` (when a stage runs again) and
:mod:`edge_tl.ship.api` (the stages of one request).
"""
