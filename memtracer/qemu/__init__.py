"""QEMU and what runs in it: the machine, the plugin's control channel, the guest runner's channel, SSH."""
