"""Process-level runtime: multi-host initialisation (`distributed`) and the CPU host heap (`hugepages`)."""
