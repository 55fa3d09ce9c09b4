"""Restoration and generation methods: each a config, a schedule of steps and a per-step update."""
