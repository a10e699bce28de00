package OpenQA::Events;
# Stand-in for openQA's OpenQA::Events: one Mojo::EventEmitter per process; openQA emits
# `->emit($name, [$user_id, $connection_id, $name, $data])` and subscribers get ($emitter, $args).
use Mojo::Base 'Mojo::EventEmitter', -signatures;

sub singleton ($class) {
    state $singleton = $class->SUPER::new;
    return $singleton;
}

1;
