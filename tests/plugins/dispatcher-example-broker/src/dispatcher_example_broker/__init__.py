"""An example dispatcher broker plug-in: messages as files in a local spool directory."""
