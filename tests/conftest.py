def pytest_addoption(parser):
    # Used by the parallel tier (tests/parallel) to check that the launcher's world is the one it sees.
    parser.addoption("--world-size", type=int, default=None, help="the number of ranks the launcher started")
