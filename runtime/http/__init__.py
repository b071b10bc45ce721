"""Spin's HTTP trigger: routing, the HTTP/1.1 server and its worker processes, and the seam to the executors."""
