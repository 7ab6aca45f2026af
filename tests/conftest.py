# The embedded backing services, the shared fixtures, and each door's server fixture.
pytest_plugins = ["tests.backing", "tests.fixtures", "tests.transfer.ftps_door", "tests.transfer.sftp_door",
                  "tests.portal.web_door"]
