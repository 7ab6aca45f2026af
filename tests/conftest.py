# The embedded backing services, the shared fixtures, each door's server fixture, the test SMTP
# server and the browser.
pytest_plugins = ["tests.backing", "tests.fixtures", "tests.transfer.ftps_door", "tests.transfer.sftp_door",
                  "tests.portal.web_door", "tests.smtp", "tests.portal.browser"]
