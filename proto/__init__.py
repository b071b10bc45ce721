"""Generated protobuf code (scripts/gen_proto.py from proto/vendor/). DO NOT EDIT.

Modules live under proto/<proto package path>/, e.g. proto.ttrpc.request_pb2,
proto.containerd.task.v2.shim_pb2; the vendored sources and their provenance are in
proto/vendor/ and proto/vendor/SOURCES.md.
"""
