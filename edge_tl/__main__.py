from edge_tl.cli.main import main

main()
