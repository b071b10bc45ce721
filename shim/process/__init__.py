"""The daemon's children: their exits (the reaper), their stdio FIFOs, terminals and pipes."""
