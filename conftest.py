"""Repository-level pytest configuration.

The plugin itself is registered through the ``pytest11`` entry point (name ``kts``), so this file
only keeps folders that hold no tests out of collection when pytest is given the repository root.
"""

collect_ignore = ["benchmarks", "docker", "docs", "manifests", "scripts"]
