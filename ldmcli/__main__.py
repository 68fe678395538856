from ldmcli.cli import main

main()
