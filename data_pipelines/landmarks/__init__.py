"""Facial landmarks (iBUG/dlib 68-point convention): the mean-face template, 5-to-68 point
fitting, and (in sibling modules) detection and caching for real photos."""
