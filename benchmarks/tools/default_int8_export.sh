# The packaged default's int8 export settings, sourced by default_v2_check.sh and ensemble_check.sh so a
# candidate or an ensemble is quantised exactly like the default it is compared with: int8 weights and
# activations, float I/O, MEAN/FULLY_CONNECTED/SOFTMAX kept in float (tflite-int8-mixed), 512 calibration images.
# CALIB (optional, before sourcing): the calibration image folder [default: calibration_data].
DEFAULT_INT8_ARGS=(--quant int8 --int8-io float32 --float-fallback-ops MEAN,FULLY_CONNECTED,SOFTMAX
                   --calib-dir "${CALIB:-calibration_data}" --calib-count 512)
