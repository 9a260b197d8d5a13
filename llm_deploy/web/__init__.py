"""The in-browser runtime (plain ES modules under runtime/) and the pages that use it."""
