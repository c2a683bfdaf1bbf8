"""What build.py does: the Debian packages, the built-in guest image and its snapshots, compiling every part."""
