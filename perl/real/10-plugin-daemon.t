# The plugin inside a real openQA web UI run as `openqa daemon` (one process).
use v5.20;
use warnings;
use Test::More;
use FindBin;
use lib "$FindBin::Bin/../t/lib", "$FindBin::Bin/../lib";
use IGTest::Scenarios qw(plugin_suite);

plugin_suite(workers => 0, base => 10000);
done_testing;
