//! Host tests of the queue and the address-space core together (being written).
