from partial_fc.config import prepare_libraries

# The test session loads MXNet's libraries with the settings every entry point gives them (cli.main does the
# same), so the equivalence tests prove the numbers of the BLAS kernel that training uses.
prepare_libraries()


def pytest_addoption(parser):
    # Used by the parallel tier (tests/parallel) to check that the launcher's world is the one it sees.
    parser.addoption("--world-size", type=int, default=None, help="the number of ranks the launcher started")
