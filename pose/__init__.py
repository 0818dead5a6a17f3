"""Core maths shared by every stage: coordinate convention, DARK codec, configs."""
