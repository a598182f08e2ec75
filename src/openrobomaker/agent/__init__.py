"""The robot agent: what AWS IoT Greengrass and RoboMaker's deployment Lambda were on a RoboMaker robot.

`python -m openrobomaker.agent --endpoint URL --credentials robot.json --work-dir DIR` long-polls the server
for the robot's deployment, downloads and verifies the bundle, runs the download condition and pre-launch
scripts, replaces the running application with `roslaunch PACKAGE LAUNCHFILE`, runs the post-launch
script, and reports each step. Everything it writes is under its work dir.
"""
