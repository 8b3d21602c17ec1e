"""Pure decision logic: no sockets, no files, no clocks. Every function here is testable with a literal."""
