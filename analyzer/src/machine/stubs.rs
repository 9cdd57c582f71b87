//! Ring-0 stubs: handlers, entry points and boot stubs. (being written)
