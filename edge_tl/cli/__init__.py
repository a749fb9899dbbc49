"""The `edge-tl` command line: thin click commands over the library."""
