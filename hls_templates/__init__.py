"""Standalone HLS C++ templates of exitflow's exit hardware (CTU, gate, merge), and helpers to
find them and the open ``ap_types`` headers for C simulation with g++."""
