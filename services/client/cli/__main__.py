from services.client.cli.app import main

main()
