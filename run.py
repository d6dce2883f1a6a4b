"""Train a task sequence with a continual-learning strategy: `python run.py strategy=ewc lambda=400`.

The same as the installed `ewcexp` command (`ewcexp.app.main.main`); `python run.py --help` lists
the config groups and every key.
"""

from ewcexp.app.main import main

if __name__ == "__main__":
    main()
