"""A Wasm task: the instance process the daemon forks, where its app comes from, and its sandbox."""
