from edgetl.cli import main

main()
