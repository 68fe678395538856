from ldmcli.cli.app import main

main()
