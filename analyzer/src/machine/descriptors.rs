//! Segment descriptors, gates and page tables as pure functions. (being written)
