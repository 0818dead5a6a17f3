"""Single home of the keypoint definitions and the person-crop record spec."""
