"""g++ compiles HLS-style C++ against the ap_types headers from the hls4ml wheel and runs it."""

import shutil
import subprocess

import pytest

from exitflow.hls_templates import ap_types_include_dir

PROGRAM = r"""
#include <ap_int.h>
#include <hls_stream.h>
#include <cstdio>

int main() {
    ap_uint<4> a = 15;
    a = a + 1;                      // wraps to 0 in 4 bits
    ap_int<5> b = -16;
    ap_int<6> c = b - 1;            // widened: -17 fits in 6 bits
    hls::stream<ap_uint<12>> s;
    for (int i = 0; i < 3; i++) s.write(ap_uint<12>(4090 + i));
    unsigned sum = 0;
    while (!s.empty()) sum += s.read().to_uint();
    std::printf("%u %d %d %u\n", a.to_uint(), b.to_int(), c.to_int(), sum);
    return 0;
}
"""


def test_headers_are_found():
    folder = ap_types_include_dir()
    assert (folder / "ap_int.h").is_file() and (folder / "hls_stream.h").is_file()


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not on PATH (apt-get install g++)")
def test_gpp_compiles_and_runs_ap_types(tmp_path):
    source = tmp_path / "t.cpp"
    source.write_text(PROGRAM)
    binary = tmp_path / "t"
    subprocess.run(
        ["g++", "-std=c++14", "-O1", "-w", f"-I{ap_types_include_dir()}", str(source), "-o", str(binary)],
        check=True,
    )
    out = subprocess.run([str(binary)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "-16", "-17", str(4090 + 4091 + 4092)]
