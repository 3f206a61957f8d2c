"""Zoo recipes of the mini-jungle; each module provides settings(profile) and build(store, settings, device)."""
