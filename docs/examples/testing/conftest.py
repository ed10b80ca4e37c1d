pytest_plugins = ["dispatcher.testing.pytest_plugin"]
