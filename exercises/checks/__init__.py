"""Autograder-style checks for the classroom exercises, one module per exercise.

A check is a plain function `check_<what>(student_object, ...)`. It either prints one line starting with
"✓" that says what it verified, or raises an `AssertionError` whose message says what was expected and
what was got. The same functions run in the student's notebook (to check their work) and in
`exercises/grade.py` (to grade it), so students and graders see the same verdicts.
"""
