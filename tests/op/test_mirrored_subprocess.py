"""MirroredStrategy over two logical CPUs, in a fresh process (logical devices
must be configured before TensorFlow initialises)."""

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def test_mirrored_two_logical_cpus():
    code = (
        "import os, sys; os.environ['TF_CPP_MIN_LOG_LEVEL']='3'; sys.path.insert(0, %r)\n"
        "import tensorflow as tf\n"
        "cpu = tf.config.list_physical_devices('CPU')[0]\n"
        "tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)\n"
        "import test_fused_op\n"
        "test_fused_op._mirrored_check()\n"
        "print('MIRRORED-OK')\n" % HERE
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "MIRRORED-OK" in out.stdout, out.stdout[-3000:] + out.stderr[-3000:]
