"""pytest plugin: fixtures that run the bundled Graph emulator for your own tests."""
