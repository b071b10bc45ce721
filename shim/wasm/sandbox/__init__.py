"""The Wasm task's sandbox: what the instance process enters before it reads a byte of the image (mount namespace,
root, credentials, seccomp, device rules)."""
