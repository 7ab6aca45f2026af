"""`python -m transfer.sftp`: serve SFTP until SIGTERM or SIGINT."""

from transfer.sftp.listener import main

raise SystemExit(main())
